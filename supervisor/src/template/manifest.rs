//! `manifest.json`: what a built template contains and how it was made.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::build::BuildMode;
use super::declaration::hex;
use super::{io_err, TemplateError};

/// Bumped on incompatible changes to this file's shape.
pub const MANIFEST_FORMAT: u32 = 1;

/// Manifests are small; a bigger file is not one of ours.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersion {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub suite: String,
    /// Every package installed in the image (`dpkg-query -W` inside it), by name.
    pub packages: Vec<PackageVersion>,
    /// `root.sqfs`'s size in bytes.
    pub image_size: u64,
    /// `root.sqfs`'s sha256, lowercase hex.
    pub image_sha256: String,
    /// When the build finished, UTC, RFC 3339 (`2026-12-02T07:10:00Z`).
    pub built_at: String,
    pub duration_ms: u64,
    pub mode: BuildMode,
    /// [`super::Declaration::hash`] of the declaration it was built from.
    pub declaration_hash: String,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, TemplateError> {
        let file = std::fs::File::open(path).map_err(io_err("opening", path))?;
        let mut text = String::new();
        file.take(MAX_MANIFEST_BYTES)
            .read_to_string(&mut text)
            .map_err(io_err("reading", path))?;
        let bad = |detail: String| TemplateError::BadManifest {
            path: path.to_path_buf(),
            detail,
        };
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format {} (this bulkhead reads {MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        Ok(manifest)
    }

    /// Writes the manifest (callers write into a staging directory that is renamed whole).
    pub fn write(&self, path: &Path) -> Result<(), TemplateError> {
        let mut text =
            serde_json::to_string_pretty(self).map_err(|e| TemplateError::BadManifest {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        text.push('\n');
        std::fs::write(path, text).map_err(io_err("writing", path))
    }

    /// The installed version of `package`, if it is in the image.
    pub fn version_of(&self, package: &str) -> Option<&str> {
        self.packages
            .iter()
            .find(|p| p.name == package)
            .map(|p| p.version.as_str())
    }
}

/// Parses `dpkg-query -W -f='${Package}\t${Version}\n'` output, sorted by name. Lines
/// that are not `name<TAB>version` are skipped.
pub fn parse_package_list(text: &str) -> Vec<PackageVersion> {
    let mut packages: Vec<PackageVersion> = text
        .lines()
        .filter_map(|line| {
            let (name, version) = line.split_once('\t')?;
            let (name, version) = (name.trim(), version.trim());
            (!name.is_empty() && !version.is_empty()).then(|| PackageVersion {
                name: name.to_string(),
                version: version.to_string(),
            })
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages.dedup_by(|a, b| a.name == b.name);
    packages
}

/// Size and sha256 of a file, read in chunks.
pub fn file_digest(path: &Path) -> Result<(u64, String), TemplateError> {
    let mut file = std::fs::File::open(path).map_err(io_err("opening", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339_utc(secs: u64) -> String {
    let rem = secs % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        civil_date(secs / 86_400),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian `YYYY-MM-DD` (Howard Hinnant's
/// algorithm).
pub fn civil_date(days: u64) -> String {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Now as RFC 3339 UTC.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339_utc(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            name: "tiny".into(),
            suite: "bookworm".into(),
            packages: parse_package_list("hello\t2.10-3\nbase-files\t12.4+deb12u15\n"),
            image_size: 3,
            image_sha256: "ab".repeat(32),
            built_at: rfc3339_utc(1_764_659_400),
            duration_ms: 88_000,
            mode: BuildMode::Unshare,
            declaration_hash: "cd".repeat(32),
        }
    }

    #[test]
    fn a_manifest_survives_a_write_and_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let m = sample();
        m.write(&path).unwrap();
        assert_eq!(Manifest::read(&path).unwrap(), m);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"mode\": \"unshare\""), "{text}");
    }

    #[test]
    fn a_corrupt_or_foreign_manifest_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, "{\"format\": 1").unwrap();
        let e = Manifest::read(&path).unwrap_err().to_string();
        assert!(e.contains("manifest.json is unreadable"), "{e}");
        let mut future = serde_json::to_value(sample()).unwrap();
        future["format"] = 99.into();
        std::fs::write(&path, future.to_string()).unwrap();
        let e = Manifest::read(&path).unwrap_err().to_string();
        assert!(e.contains("format 99"), "{e}");
    }

    #[test]
    fn the_package_list_is_parsed_sorted_and_looked_up_by_name() {
        let m = sample();
        assert_eq!(m.packages[0].name, "base-files");
        assert_eq!(m.version_of("hello"), Some("2.10-3"));
        assert_eq!(m.version_of("firefox-esr"), None);
        assert!(parse_package_list("garbage\n\t\nx\t\n").is_empty());
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400 + 3_723), "2000-02-29T01:02:03Z");
    }

    #[test]
    fn the_digest_is_the_sha256_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let (size, sha) = file_digest(&path).unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
