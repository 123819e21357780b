//! The uncompressed kernel (`vmlinux`) out of a distribution's bzImage, extracted once
//! when the guest image is built: a partition booting it skips the kernel's own
//! decompressor, most of a cold boot under software virtualisation.
//!
//! A bzImage's setup header says where its compressed payload lies (`payload_offset`,
//! `payload_length`, from the start of the protected-mode part) and the payload's last
//! four bytes are the uncompressed size (little endian), which the result must match.
//! Debian compresses with xz (with the x86 BCJ filter, which pure-Rust xz readers lack),
//! so xz goes through the `xz` tool (xz-utils, in every Debian system); gzip and zstd
//! kernels are read in-process.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// Setup header fields (offsets into the bzImage, boot protocol 2.08+).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// The largest kernel we expect to unpack (Debian's is ~66 MiB).
const MAX_VMLINUX: u64 = 512 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("not a bzImage of boot protocol 2.08 or later ({0})")]
    NotBzImage(&'static str),
    #[error("the payload ({offset:#x} + {length} bytes) lies outside the {size}-byte bzImage")]
    PayloadOutside { offset: u64, length: u64, size: u64 },
    #[error("the payload is compressed with {0}, which this extractor does not read")]
    Unsupported(&'static str),
    #[error("decompressing the payload ({format}): {detail}")]
    Decompress {
        format: &'static str,
        detail: String,
    },
    #[error("the payload says it unpacks to {expected} bytes, it unpacked to {got}")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("the unpacked kernel is not an ELF executable")]
    NotElf,
}

/// The compression of a bzImage's payload, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    Other(&'static str),
}

pub fn compression(payload: &[u8]) -> Compression {
    match payload {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [0x02, 0x21, 0x4c, 0x18, ..] => Compression::Other("lz4"),
        [b'B', b'Z', b'h', ..] => Compression::Other("bzip2"),
        [0x89, b'L', b'Z', b'O', ..] => Compression::Other("lzo"),
        [0x5d, 0, 0, ..] => Compression::Other("lzma"),
        _ => Compression::Other("an unknown format"),
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload inside `bzimage`, the appended size included.
pub fn payload(bzimage: &[u8]) -> Result<&[u8], ExtractError> {
    if bzimage.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err(ExtractError::NotBzImage("no HdrS magic"));
    }
    let version = bzimage
        .get(VERSION..VERSION + 2)
        .map(|v| u16::from_le_bytes([v[0], v[1]]))
        .unwrap_or(0);
    if version < 0x0208 {
        return Err(ExtractError::NotBzImage(
            "too old to say where its payload is",
        ));
    }
    let sects = match bzimage.get(SETUP_SECTS).copied() {
        Some(0) => 4,
        Some(n) => u64::from(n),
        None => return Err(ExtractError::NotBzImage("truncated header")),
    };
    let (Some(offset), Some(length)) = (
        u32_at(bzimage, PAYLOAD_OFFSET),
        u32_at(bzimage, PAYLOAD_LENGTH),
    ) else {
        return Err(ExtractError::NotBzImage("truncated header"));
    };
    let start = (sects + 1) * 512 + u64::from(offset);
    let length = u64::from(length);
    let size = bzimage.len() as u64;
    let outside = ExtractError::PayloadOutside {
        offset: start,
        length,
        size,
    };
    if length < 4 || start.checked_add(length).is_none_or(|end| end > size) {
        return Err(outside);
    }
    Ok(&bzimage[start as usize..(start + length) as usize])
}

/// Unpacks `bzimage`'s kernel: an ELF `vmlinux` of exactly the size its payload names.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, ExtractError> {
    let payload = payload(bzimage)?;
    let (data, size) = payload.split_at(payload.len() - 4);
    let expected = u64::from(u32::from_le_bytes([size[0], size[1], size[2], size[3]]));
    if expected > MAX_VMLINUX {
        return Err(ExtractError::SizeMismatch { expected, got: 0 });
    }
    let kernel = match compression(data) {
        Compression::Gzip => read_all("gzip", flate2::read::GzDecoder::new(data))?,
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(data).map_err(|e| ExtractError::Decompress {
                    format: "zstd",
                    detail: e.to_string(),
                })?;
            read_all("zstd", decoder)?
        }
        Compression::Xz => unxz(data)?,
        Compression::Other(name) => return Err(ExtractError::Unsupported(name)),
    };
    if kernel.len() as u64 != expected {
        return Err(ExtractError::SizeMismatch {
            expected,
            got: kernel.len() as u64,
        });
    }
    if !kernel.starts_with(b"\x7fELF") {
        return Err(ExtractError::NotElf);
    }
    Ok(kernel)
}

fn read_all(format: &'static str, reader: impl Read) -> Result<Vec<u8>, ExtractError> {
    let mut out = Vec::new();
    reader
        .take(MAX_VMLINUX + 1)
        .read_to_end(&mut out)
        .map_err(|e| ExtractError::Decompress {
            format,
            detail: e.to_string(),
        })?;
    Ok(out)
}

/// `xz -dc`, fed from a thread so neither pipe can fill up and stall the other.
fn unxz(data: &[u8]) -> Result<Vec<u8>, ExtractError> {
    let fail = |detail: String| ExtractError::Decompress {
        format: "xz",
        detail,
    };
    let mut child = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("running `xz` (install xz-utils): {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| fail("no pipe to xz".into()))?;
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("no pipe from xz".into()))?;
    let out = read_all("xz", stdout);
    if out.as_ref().map_or(true, |o| o.len() as u64 > MAX_VMLINUX) {
        // It stopped being read: it would block on its full pipe forever.
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| fail(e.to_string()))?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    // A write error only means xz stopped reading; its status says why.
    let _ = feeder.join();
    if !status.success() {
        return Err(fail(format!("{status}: {}", stderr.trim())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped file: a setup header naming `payload` (and the size appended).
    fn fake_bzimage(compressed: &[u8], size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512];
        b[SETUP_SECTS] = 4;
        b[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        b[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        b.extend_from_slice(&[0u8; 0x40]);
        let len = compressed.len() as u32 + 4;
        b[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x40u32.to_le_bytes());
        b[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&len.to_le_bytes());
        b.extend_from_slice(compressed);
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(b"trailing setup code and padding");
        b
    }

    fn fake_elf() -> Vec<u8> {
        let mut k = b"\x7fELF".to_vec();
        k.extend((0..100_000u32).map(|i| (i * 7 % 251) as u8));
        k
    }

    #[test]
    fn a_zstd_payload_unpacks_to_the_elf_of_the_size_it_names() {
        let kernel = fake_elf();
        let z = zstd::encode_all(kernel.as_slice(), 3).unwrap();
        let b = fake_bzimage(&z, kernel.len() as u32);
        assert_eq!(extract(&b).unwrap(), kernel);
    }

    #[test]
    fn a_gzip_payload_unpacks_too() {
        let kernel = fake_elf();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&kernel).unwrap();
        let b = fake_bzimage(&gz.finish().unwrap(), kernel.len() as u32);
        assert_eq!(extract(&b).unwrap(), kernel);
    }

    #[test]
    fn an_xz_payload_with_the_x86_filter_unpacks_through_the_xz_tool() {
        let kernel = fake_elf();
        let mut child = Command::new("xz")
            .args([
                "--compress",
                "--stdout",
                "--check=crc32",
                "--x86",
                "--lzma2=dict=1MiB",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = kernel.clone();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let mut xz = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut xz).unwrap();
        assert!(child.wait().unwrap().success());
        feeder.join().unwrap().unwrap();
        let b = fake_bzimage(&xz, kernel.len() as u32);
        assert_eq!(compression(payload(&b).unwrap()), Compression::Xz);
        assert_eq!(extract(&b).unwrap(), kernel);
    }

    #[test]
    fn a_wrong_appended_size_is_refused_with_both_sizes() {
        let kernel = fake_elf();
        let z = zstd::encode_all(kernel.as_slice(), 3).unwrap();
        let b = fake_bzimage(&z, kernel.len() as u32 - 1);
        assert_eq!(
            extract(&b).unwrap_err(),
            ExtractError::SizeMismatch {
                expected: kernel.len() as u64 - 1,
                got: kernel.len() as u64
            }
        );
    }

    #[test]
    fn a_payload_reaching_past_the_file_is_refused_before_reading_it() {
        let mut b = fake_bzimage(b"\x28\xb5\x2f\xfdxx", 10);
        b[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            extract(&b).unwrap_err(),
            ExtractError::PayloadOutside { .. }
        ));
        assert!(matches!(
            extract(&b[..0x100]).unwrap_err(),
            ExtractError::NotBzImage(_)
        ));
    }

    #[test]
    fn other_compressions_and_non_elf_results_are_named() {
        let b = fake_bzimage(b"BZh91AY&SY", 10);
        assert_eq!(extract(&b).unwrap_err(), ExtractError::Unsupported("bzip2"));
        let z = zstd::encode_all(&b"not an elf"[..], 3).unwrap();
        let b = fake_bzimage(&z, 10);
        assert_eq!(extract(&b).unwrap_err(), ExtractError::NotElf);
    }
}
