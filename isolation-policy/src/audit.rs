//! The audit log: one JSON object per line, appended, rotated by size.
//!
//! `audit.log` is the live file; when it would grow past the size limit it becomes
//! `audit.log.1`, the old `.1` becomes `.2`, and so on up to `keep` files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::request::{Decision, Request};
use crate::rules::RuleRef;

/// One audited decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC time with milliseconds.
    pub time: String,
    pub request: Request,
    /// `allow`, `deny` or `ask`.
    pub decision: String,
    /// Where the request went (after a redirect), if allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub rule: Option<RuleRef>,
    pub explanation: String,
}

impl AuditRecord {
    pub fn new(time: SystemTime, request: &Request, decision: &Decision) -> Self {
        AuditRecord {
            time: humantime::format_rfc3339_millis(time).to_string(),
            request: request.clone(),
            decision: decision.verdict.word().to_string(),
            target: match &decision.verdict {
                crate::request::Verdict::Allow { target } => target.clone(),
                _ => None,
            },
            rule: decision.rule.clone(),
            explanation: decision.explanation.clone(),
        }
    }

    pub fn timestamp(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.time).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot write audit log {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read audit log {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode audit record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Appends records to `audit.log` in a directory, rotating by size.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
}

/// Default: rotate at 4 MiB, keep 4 old files.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 20;
pub const DEFAULT_KEEP: usize = 4;
pub const FILE_NAME: &str = "audit.log";

impl AuditLog {
    /// A log at `dir/audit.log`; the directory is created if missing.
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> Result<AuditLog, AuditError> {
        fs::create_dir_all(dir).map_err(|source| AuditError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(AuditLog {
            path: dir.join(FILE_NAME),
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one decision, stamped now.
    pub fn record(&self, request: &Request, decision: &Decision) -> Result<(), AuditError> {
        self.append(&AuditRecord::new(SystemTime::now(), request, decision))
    }

    pub fn append(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let err = |source| AuditError::Write {
            path: self.path.clone(),
            source,
        };
        let size = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            self.rotate().map_err(err)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(err)?;
        if ends_torn(&mut f).map_err(err)? {
            // A crash cut the last record short: start ours on a fresh line.
            line.insert(0, '\n');
        }
        // One write per record so concurrent appenders never interleave inside a line.
        f.write_all(line.as_bytes()).map_err(err)?;
        f.sync_data().map_err(err)
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&self) -> io::Result<()> {
        let oldest = self.rotated(self.keep);
        if oldest.exists() {
            fs::remove_file(&oldest)?;
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::rename(&self.path, self.rotated(1))
    }

    /// Every file of this log, oldest first.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = (1..=self.keep)
            .rev()
            .map(|n| self.rotated(n))
            .filter(|p| p.exists())
            .collect();
        if self.path.exists() {
            out.push(self.path.clone());
        }
        out
    }

    /// Read records matching `filter`, oldest first.
    pub fn read(&self, filter: &AuditFilter) -> Result<AuditReadout, AuditError> {
        let mut out = AuditReadout::default();
        for path in self.files() {
            let f = File::open(&path).map_err(|source| AuditError::Read {
                path: path.clone(),
                source,
            })?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(|source| AuditError::Read {
                    path: path.clone(),
                    source,
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<AuditRecord>(&line) {
                    Ok(r) if filter.matches(&r) => out.records.push(r),
                    Ok(_) => {}
                    Err(_) => out.unreadable_lines += 1,
                }
            }
        }
        if let Some(n) = filter.last {
            let skip = out.records.len().saturating_sub(n);
            out.records.drain(..skip);
        }
        Ok(out)
    }
}

/// Does the file end without a newline (a record cut short)?
fn ends_torn(f: &mut File) -> io::Result<bool> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// What the reader found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReadout {
    pub records: Vec<AuditRecord>,
    /// Lines that were not valid records (e.g. cut short by a crash).
    pub unreadable_lines: usize,
}

/// Which records to read; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Source or target is this partition.
    pub partition: Option<String>,
    pub service: Option<String>,
    /// `allow`, `deny` or `ask`.
    pub decision: Option<String>,
    pub since: Option<SystemTime>,
    /// Only the newest N.
    pub last: Option<usize>,
}

impl AuditFilter {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let partition_ok = self.partition.as_deref().is_none_or(|p| {
            r.request.source() == p
                || r.request.target() == Some(p)
                || r.target.as_deref() == Some(p)
        });
        let service_ok = self.service.as_deref().is_none_or(|s| match &r.request {
            Request::Service { service, .. } => service == s,
            Request::Network { .. } => s == "network",
            Request::Dns { .. } => s == "dns",
        });
        let decision_ok = self.decision.as_deref().is_none_or(|d| r.decision == d);
        let since_ok = self
            .since
            .is_none_or(|since| r.timestamp().is_some_and(|t| t >= since));
        partition_ok && service_ok && decision_ok && since_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Verdict;
    use std::time::Duration;

    fn decision(verdict: Verdict) -> Decision {
        Decision {
            verdict,
            rule: Some(RuleRef {
                file: "p/50.policy".into(),
                line: 3,
                column: 1,
                text: "x * a b allow".into(),
            }),
            explanation: "because".into(),
            chain: Vec::new(),
        }
    }

    #[test]
    fn appended_records_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        log.record(
            &Request::clipboard_paste("a", "b"),
            &decision(Verdict::Allow {
                target: Some("b".into()),
            }),
        )
        .unwrap();
        log.record(
            &Request::file_copy("b", "a"),
            &decision(Verdict::Deny { notify: true }),
        )
        .unwrap();
        let out = log.read(&AuditFilter::default()).unwrap();
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[0].decision, "allow");
        assert_eq!(out.records[0].target.as_deref(), Some("b"));
        assert_eq!(out.records[1].request, Request::file_copy("b", "a"));
        assert_eq!(out.records[1].rule.as_ref().unwrap().line, 3);
        let text = fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.starts_with("{\"time\":\"")));
    }

    #[test]
    fn log_rotates_by_size_and_keeps_only_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), 600, 2).unwrap();
        for i in 0..20 {
            log.record(
                &Request::clipboard_paste(&format!("p{i}"), "b"),
                &decision(Verdict::Deny { notify: true }),
            )
            .unwrap();
        }
        let files = log.files();
        assert_eq!(files.len(), 3, "{files:?}"); // .2, .1 and the live file
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 600, "{f:?} too big");
        }
        let all = log.read(&AuditFilter::default()).unwrap().records;
        assert!(all.len() < 20, "old records were dropped");
        assert_eq!(all.last().unwrap().request.source(), "p19");
        let sources: Vec<_> = all
            .iter()
            .map(|r| {
                r.request
                    .source()
                    .trim_start_matches('p')
                    .parse::<u32>()
                    .unwrap()
            })
            .collect();
        assert!(
            sources.windows(2).all(|w| w[0] + 1 == w[1]),
            "oldest first, none lost between files: {sources:?}"
        );
    }

    #[test]
    fn filter_selects_by_partition_service_decision_time_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let allow = decision(Verdict::Allow {
            target: Some("b".into()),
        });
        let deny = decision(Verdict::Deny { notify: true });
        log.append(&AuditRecord::new(
            t0,
            &Request::clipboard_paste("a", "b"),
            &allow,
        ))
        .unwrap();
        log.append(&AuditRecord::new(
            t0 + Duration::from_secs(10),
            &Request::file_copy("c", "d"),
            &deny,
        ))
        .unwrap();
        log.append(&AuditRecord::new(
            t0 + Duration::from_secs(20),
            &Request::Dns { source: "a".into() },
            &deny,
        ))
        .unwrap();
        let read = |f: AuditFilter| log.read(&f).unwrap().records.len();
        assert_eq!(
            read(AuditFilter {
                partition: Some("a".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            read(AuditFilter {
                partition: Some("d".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            read(AuditFilter {
                service: Some("bulkhead.FileCopy".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            read(AuditFilter {
                service: Some("dns".into()),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            read(AuditFilter {
                decision: Some("deny".into()),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            read(AuditFilter {
                since: Some(t0 + Duration::from_secs(5)),
                ..Default::default()
            }),
            2
        );
        let last = log
            .read(&AuditFilter {
                last: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(last.records[0].request.source(), "a");
        assert_eq!(last.records[0].decision, "deny");
    }

    #[test]
    fn a_torn_line_is_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        log.record(
            &Request::clipboard_paste("a", "b"),
            &decision(Verdict::Deny { notify: true }),
        )
        .unwrap();
        OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"{\"time\":\"20")
            .unwrap();
        log.record(
            &Request::file_copy("c", "d"),
            &decision(Verdict::Deny { notify: true }),
        )
        .unwrap();
        let out = log.read(&AuditFilter::default()).unwrap();
        assert_eq!(
            out.records.len(),
            2,
            "the record after the torn one is intact"
        );
        assert_eq!(out.records[1].request, Request::file_copy("c", "d"));
        assert_eq!(out.unreadable_lines, 1);
    }
}
