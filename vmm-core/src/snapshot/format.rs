//! The state file: a versioned header, then named records, each with its own SHA-256.
//!
//! ```text
//! magic "BULKSNAP" | format version u32 LE | CPU fingerprint [32] | record count u32 LE
//! per record: name length u16 LE | name | payload length u64 LE | sha256(name, payload) [32] | payload
//! ```
//!
//! Nothing after the last record is allowed. The whole file is read at once (it holds
//! registers and device state, not guest memory, so it stays small; [`MAX_STATE_FILE`]).

use sha2::{Digest, Sha256};

use super::SnapshotError;

pub const MAGIC: &[u8; 8] = b"BULKSNAP";
/// Bumped whenever a record's meaning or encoding changes; an older or newer file is
/// refused, never guessed at.
/// 2: the framebuffer's pixels moved from a state record to the memory file.
pub const FORMAT_VERSION: u32 = 2;
/// The state file never needs more (registers and device state, a few KiB per device); a
/// larger file is refused before it is read.
pub const MAX_STATE_FILE: u64 = 16 << 20;
const MAX_RECORDS: u32 = 4096;
const MAX_NAME: usize = 256;

pub type Fingerprint = [u8; 32];

/// Records in file order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Records {
    pub fingerprint: Fingerprint,
    pub records: Vec<(String, Vec<u8>)>,
}

fn record_hash(name: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((name.len() as u64).to_le_bytes());
    h.update(name);
    h.update(payload);
    h.finalize().into()
}

impl Records {
    pub fn push(&mut self, name: impl Into<String>, payload: Vec<u8>) {
        self.records.push((name.into(), payload));
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.records
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_slice())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        for (name, payload) in &self.records {
            let name = name.as_bytes();
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(&record_hash(name, payload));
            out.extend_from_slice(payload);
        }
        out
    }

    /// Parses and checks a whole state file. Every failure names what was wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(MAGIC.len(), "the header")?;
        if magic != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let version = r.u32("the format version")?;
        if version != FORMAT_VERSION {
            return Err(SnapshotError::FormatVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(r.take(32, "the CPU fingerprint")?);
        let count = r.u32("the record count")?;
        if count > MAX_RECORDS {
            return Err(SnapshotError::Malformed(format!(
                "{count} records (at most {MAX_RECORDS})"
            )));
        }
        let mut records = Vec::with_capacity(count as usize);
        for index in 0..count {
            let what = format!("record {index}");
            let len = usize::from(r.u16(&what)?);
            if len > MAX_NAME {
                return Err(SnapshotError::Malformed(format!(
                    "{what}: name of {len} bytes"
                )));
            }
            let name = r.take(len, &what)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| SnapshotError::Malformed(format!("{what}: name is not UTF-8")))?
                .to_string();
            let what = format!("record {index} ({name})");
            let payload_len = r.u64(&what)?;
            let payload_len = usize::try_from(payload_len)
                .map_err(|_| SnapshotError::Truncated { what: what.clone() })?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(r.take(32, &what)?);
            let payload = r.take(payload_len, &what)?;
            if record_hash(name.as_bytes(), payload) != hash {
                return Err(SnapshotError::Checksum { record: name });
            }
            records.push((name, payload.to_vec()));
        }
        if r.pos != bytes.len() {
            return Err(SnapshotError::Malformed(format!(
                "{} bytes after the last record",
                bytes.len() - r.pos
            )));
        }
        Ok(Self {
            fingerprint,
            records,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| SnapshotError::Truncated {
                what: what.to_string(),
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self, what: &str) -> Result<u16, SnapshotError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, SnapshotError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self, what: &str) -> Result<u64, SnapshotError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Records {
        let mut r = Records {
            fingerprint: [7; 32],
            ..Default::default()
        };
        r.push("vm", b"{\"a\":1}".to_vec());
        r.push("vcpu0", vec![1, 2, 3]);
        r
    }

    #[test]
    fn records_round_trip() {
        let r = sample();
        assert_eq!(Records::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn every_truncation_is_refused_as_truncated_or_not_a_snapshot() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            let err = Records::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    SnapshotError::Truncated { .. } | SnapshotError::NotASnapshot
                ),
                "at {len}: {err}"
            );
        }
    }

    #[test]
    fn a_flipped_payload_byte_fails_that_records_checksum() {
        let mut bytes = sample().encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            Records::decode(&bytes).unwrap_err().to_string(),
            SnapshotError::Checksum {
                record: "vcpu0".into()
            }
            .to_string()
        );
    }

    #[test]
    fn another_format_version_is_refused() {
        let mut bytes = sample().encode();
        bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(matches!(
            Records::decode(&bytes),
            Err(SnapshotError::FormatVersion { found, .. }) if found == FORMAT_VERSION + 1
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(
            Records::decode(&bytes),
            Err(SnapshotError::Malformed(_))
        ));
    }
}
