//! A partition bundle: one encrypted file that carries a partition to another machine (its
//! config and the rules that name it, its private disk, its template's name and manifest
//! hash, optionally the template itself).
//!
//! Layers, outside in: age with a passphrase (scrypt; authenticated in 64 KiB chunks with a
//! marked last chunk, so any changed or missing byte fails decryption), zstd, then the
//! records below. The records carry their own SHA-256s, so that a bug in any layer cannot
//! hand an import a silently different disk.
//!
//! ```text
//! MAGIC  version:u32
//! 'F' name_len:u16 name  size:u64  { offset:u64 len:u64 bytes }*  offset:u64=MAX len:u64=0  sha256
//! ...
//! 'E' files:u32  sha256(every byte before this record)
//! ```
//!
//! Files are sparse both ways: export reads only the data extents (`SEEK_DATA`), import
//! writes only them. Reading trusts nothing: names are checked against a fixed grammar
//! (no `..`, no absolute paths, no hidden names), extents must be ordered and inside the
//! file, and the data written may never exceed the free space of the staging disk.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use age::secrecy::SecretString;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 16] = b"BULKHEAD-BUNDLE\0";
const VERSION: u32 = 1;
const END_OF_EXTENTS: u64 = u64::MAX;
/// Files in one bundle: a partition has a handful; a snapshot adds a few more.
const MAX_FILES: u32 = 1024;
/// The largest logical file: 16 TiB (sparse; only data extents cost space).
const MAX_FILE_SIZE: u64 = 16 << 40;
const MAX_NAME: usize = 128;
/// Left free on the staging disk whatever a bundle says.
const SPACE_RESERVE: u64 = 256 << 20;
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("wrong passphrase for {0} (or its header was changed)")]
    WrongPassphrase(PathBuf),
    #[error("{path} is not a Bulkhead bundle, or it is damaged or was changed: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("{path} is a bundle of format version {found}; this Bulkhead reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: unpacking needs more than the {free_mib} MiB free in {staging}")]
    NoSpace {
        path: PathBuf,
        staging: PathBuf,
        free_mib: u64,
    },
    #[error("cannot encrypt {path}: {detail}")]
    Encrypt { path: PathBuf, detail: String },
    #[error(
        "bundle entry name `{0}` is not allowed (1-2 path parts of letters, digits, `.`, `_`, `-`)"
    )]
    BadName(String),
}

fn io_at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// An entry name: one or two `/`-separated parts of `[A-Za-z0-9._-]`, none starting with
/// `.`, at most [`MAX_NAME`] bytes — so it can never leave the directory it is unpacked in.
pub fn valid_entry_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    !name.is_empty()
        && name.len() <= MAX_NAME
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
}

/// A [`Write`] that hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Sink = Hashing<zstd::Encoder<'static, age::stream::StreamWriter<File>>>;

/// Writes a bundle to `PATH.partial` and renames it to `PATH` in [`BundleWriter::finish`];
/// dropped unfinished, it removes the partial file.
pub struct BundleWriter {
    sink: Option<Sink>,
    path: PathBuf,
    partial: PathBuf,
    files: u32,
    names: Vec<String>,
}

impl BundleWriter {
    /// `work_factor`: scrypt's log2(N); `None` picks about one second on this machine.
    pub fn create(
        path: &Path,
        passphrase: SecretString,
        work_factor: Option<u8>,
    ) -> Result<BundleWriter, BundleError> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(io_at("creating", &partial))?;
        let mut recipient = age::scrypt::Recipient::new(passphrase);
        if let Some(w) = work_factor {
            recipient.set_work_factor(w.clamp(1, 30));
        }
        let encrypt = |detail: String| BundleError::Encrypt {
            path: path.to_path_buf(),
            detail,
        };
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(|e| encrypt(e.to_string()))?;
        let stream = encryptor
            .wrap_output(file)
            .map_err(io_at("encrypting into", &partial))?;
        let zstd = zstd::Encoder::new(stream, 3).map_err(io_at("compressing into", &partial))?;
        let mut writer = BundleWriter {
            sink: Some(Hashing {
                inner: zstd,
                hash: Sha256::new(),
            }),
            path: path.to_path_buf(),
            partial,
            files: 0,
            names: Vec::new(),
        };
        writer.write(MAGIC)?;
        writer.write(&VERSION.to_le_bytes())?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        let closed = || io::Error::other("the bundle is already finished");
        self.sink
            .as_mut()
            .ok_or_else(closed)
            .and_then(|s| s.write_all(bytes))
            .map_err(io_at("writing", &self.partial))
    }

    fn begin(&mut self, name: &str, size: u64) -> Result<(), BundleError> {
        if !valid_entry_name(name) || self.names.iter().any(|n| n == name) {
            return Err(BundleError::BadName(name.to_string()));
        }
        self.names.push(name.to_string());
        self.files += 1;
        self.write(b"F")?;
        // valid_entry_name bounds the length to MAX_NAME.
        self.write(&(name.len() as u16).to_le_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&size.to_le_bytes())
    }

    /// Adds an entry holding `bytes`.
    pub fn add_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        self.begin(name, bytes.len() as u64)?;
        let mut hash = Sha256::new();
        if !bytes.is_empty() {
            let head = extent_header(0, bytes.len() as u64);
            hash.update(head);
            hash.update(bytes);
            self.write(&head)?;
            self.write(bytes)?;
        }
        self.end_extents(hash)
    }

    /// Adds the file at `source` as entry `name`, reading only its data extents.
    /// `progress` gets the number of data bytes copied so far.
    pub fn add_file(
        &mut self,
        name: &str,
        source: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), BundleError> {
        let mut file = File::open(source).map_err(io_at("opening", source))?;
        let size = file.metadata().map_err(io_at("reading", source))?.len();
        self.begin(name, size)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut copied = 0u64;
        for (offset, len) in data_extents(&file, size).map_err(io_at("reading", source))? {
            let head = extent_header(offset, len);
            hash.update(head);
            self.write(&head)?;
            file.seek(SeekFrom::Start(offset))
                .map_err(io_at("reading", source))?;
            let mut left = len;
            while left > 0 {
                let n = left.min(COPY_CHUNK as u64) as usize;
                file.read_exact(&mut buf[..n])
                    .map_err(io_at("reading (did it shrink while exporting?)", source))?;
                hash.update(&buf[..n]);
                self.write(&buf[..n])?;
                left -= n as u64;
                copied += n as u64;
                progress(copied);
            }
        }
        self.end_extents(hash)
    }

    fn end_extents(&mut self, hash: Sha256) -> Result<(), BundleError> {
        self.write(&extent_header(END_OF_EXTENTS, 0))?;
        self.write(&hash.finalize())
    }

    /// Writes the end record, flushes every layer to disk and gives the bundle its name.
    pub fn finish(mut self) -> Result<PathBuf, BundleError> {
        let files = self.files;
        self.write(b"E")?;
        self.write(&files.to_le_bytes())?;
        let partial = self.partial.clone();
        let mut sink = self
            .sink
            .take()
            .ok_or_else(|| io::Error::other("the bundle is already finished"))
            .map_err(io_at("writing", &partial))?;
        let digest = std::mem::take(&mut sink.hash).finalize();
        sink.inner
            .write_all(&digest)
            .map_err(io_at("writing", &partial))?;
        let stream = sink
            .inner
            .finish()
            .map_err(io_at("compressing", &partial))?;
        let file = stream.finish().map_err(io_at("encrypting", &partial))?;
        file.sync_all().map_err(io_at("flushing", &partial))?;
        fs::rename(&partial, &self.path).map_err(io_at("naming", &self.path))?;
        Ok(self.path.clone())
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if self.sink.is_some() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

fn extent_header(offset: u64, len: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&offset.to_le_bytes());
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

/// The data extents of `file` (offset, length), in order; holes are skipped. Where the file
/// system cannot tell, the whole file is one extent.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom as RSeek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(file, RSeek::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if pos == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = seek(file, RSeek::Hole(start))?.min(size);
        out.push((start, end - start));
        pos = end;
    }
    Ok(out)
}

/// How far [`unpack`] is: data bytes written so far, and bytes of the bundle file read so
/// far (out of its length, which the caller knows: the measure for a progress bar).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackProgress {
    pub data_bytes: u64,
    pub bundle_bytes: u64,
}

/// A [`Read`] that counts what passes through, for progress on the encrypted file.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A bundle unpacked into a staging directory, checked. The directory is removed when this
/// is dropped; move what you keep out of it first ([`Unpacked::path`]).
#[derive(Debug)]
pub struct Unpacked {
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
}

impl Unpacked {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Where entry `name` was unpacked.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.get(name).map(PathBuf::as_path)
    }

    /// Entry `name` read as text (for the small ones: config, rules, metadata).
    pub fn text(&self, name: &str) -> Result<Option<String>, BundleError> {
        let Some(path) = self.path(name) else {
            return Ok(None);
        };
        fs::read_to_string(path)
            .map(Some)
            .map_err(io_at("reading", path))
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Reads `path`, checks every layer and unpacks its entries into a new directory under
/// `staging_parent` (use one on the file system the entries will move to). Nothing is left
/// behind on any error. `progress` is called after every chunk of data written.
pub fn unpack(
    path: &Path,
    passphrase: SecretString,
    staging_parent: &Path,
    progress: &mut dyn FnMut(UnpackProgress),
) -> Result<Unpacked, BundleError> {
    let read = Arc::new(AtomicU64::new(0));
    let file = Counting {
        inner: File::open(path).map_err(io_at("opening", path))?,
        read: Arc::clone(&read),
    };
    let damaged = |detail: String| BundleError::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    let decryptor =
        age::Decryptor::new_buffered(BufReader::new(file)).map_err(|e| damaged(e.to_string()))?;
    if !decryptor.is_scrypt() {
        return Err(damaged("not encrypted with a passphrase".into()));
    }
    let identity = age::scrypt::Identity::new(passphrase);
    let plain = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            // An scrypt stanza that does not open: the passphrase is wrong, or the header
            // was changed (its MAC is checked right after, with the same key).
            age::DecryptError::NoMatchingKeys
            | age::DecryptError::KeyDecryptionFailed
            | age::DecryptError::DecryptionFailed => {
                BundleError::WrongPassphrase(path.to_path_buf())
            }
            other => damaged(other.to_string()),
        })?;
    let zstd = zstd::Decoder::new(plain).map_err(|e| damaged(e.to_string()))?;
    fs::create_dir_all(staging_parent).map_err(io_at("creating", staging_parent))?;
    let dir = staging_parent.join(format!(
        ".import-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    fs::create_dir(&dir).map_err(io_at("creating", &dir))?;
    // From here `unpacked` owns the directory: any early return removes it.
    let mut unpacked = Unpacked {
        dir,
        files: BTreeMap::new(),
    };
    let free = free_bytes(&unpacked.dir)
        .map_err(io_at("checking free space in", &unpacked.dir))?
        .saturating_sub(SPACE_RESERVE);
    let mut reader = Reader {
        inner: zstd,
        hash: Sha256::new(),
        path: path.to_path_buf(),
        read,
    };
    reader.records(&mut unpacked, free, progress)?;
    Ok(unpacked)
}

fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

struct Reader<R> {
    inner: R,
    hash: Sha256,
    path: PathBuf,
    /// Bytes of the bundle file read so far (for progress).
    read: Arc<AtomicU64>,
}

impl<R: Read> Reader<R> {
    fn damaged(&self, detail: impl Into<String>) -> BundleError {
        BundleError::Damaged {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), BundleError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.damaged("it ends early (truncated)")
            } else {
                self.damaged(e.to_string())
            }
        })?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn u16(&mut self) -> Result<u16, BundleError> {
        let mut b = [0u8; 2];
        self.exact(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, BundleError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, BundleError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn records(
        &mut self,
        out: &mut Unpacked,
        mut free: u64,
        progress: &mut dyn FnMut(UnpackProgress),
    ) -> Result<(), BundleError> {
        let mut magic = [0u8; 16];
        self.exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(self.damaged("no bundle header"));
        }
        let version = self.u32()?;
        if version != VERSION {
            return Err(BundleError::Version {
                path: self.path.clone(),
                found: version,
            });
        }
        let mut unpacked_bytes = 0u64;
        loop {
            let mut tag = [0u8; 1];
            self.exact(&mut tag)?;
            match tag[0] {
                b'F' => {
                    if out.files.len() as u32 >= MAX_FILES {
                        return Err(self.damaged(format!("more than {MAX_FILES} files")));
                    }
                    self.file(out, &mut free, &mut unpacked_bytes, progress)?;
                }
                b'E' => return self.end(out.files.len() as u32),
                other => return Err(self.damaged(format!("unknown record {other:#04x}"))),
            }
        }
    }

    fn file(
        &mut self,
        out: &mut Unpacked,
        free: &mut u64,
        unpacked_bytes: &mut u64,
        progress: &mut dyn FnMut(UnpackProgress),
    ) -> Result<(), BundleError> {
        let name_len = usize::from(self.u16()?);
        if name_len == 0 || name_len > MAX_NAME {
            return Err(self.damaged(format!("an entry name of {name_len} bytes")));
        }
        let mut name = vec![0u8; name_len];
        self.exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| self.damaged("a name is not UTF-8"))?;
        if !valid_entry_name(&name) || out.files.contains_key(&name) {
            return Err(self.damaged(format!("entry name {name:?} is not allowed or repeated")));
        }
        let size = self.u64()?;
        if size > MAX_FILE_SIZE {
            return Err(self.damaged(format!("{name} claims {size} bytes")));
        }
        let target = out.dir.join(&name);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_at("creating", parent))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io_at("creating", &target))?;
        out.files.insert(name.clone(), target.clone());
        let mut hash = Sha256::new();
        let mut next_free = 0u64;
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            let offset = self.u64()?;
            let len = self.u64()?;
            if offset == END_OF_EXTENTS && len == 0 {
                break;
            }
            let in_file = offset >= next_free && offset.checked_add(len).is_some_and(|e| e <= size);
            if !in_file || len == 0 {
                return Err(self.damaged(format!(
                    "{name}: extent {offset}+{len} is out of order or outside its {size} bytes"
                )));
            }
            if len > *free {
                return Err(BundleError::NoSpace {
                    path: self.path.clone(),
                    staging: out.dir.clone(),
                    free_mib: *free >> 20,
                });
            }
            *free -= len;
            hash.update(extent_header(offset, len));
            file.seek(SeekFrom::Start(offset))
                .map_err(io_at("writing", &target))?;
            let mut left = len;
            while left > 0 {
                let n = left.min(COPY_CHUNK as u64) as usize;
                self.exact(&mut buf[..n])?;
                hash.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .map_err(io_at("writing", &target))?;
                left -= n as u64;
                *unpacked_bytes += n as u64;
                progress(UnpackProgress {
                    data_bytes: *unpacked_bytes,
                    bundle_bytes: self.read.load(Ordering::Relaxed),
                });
            }
            next_free = offset + len;
        }
        file.set_len(size).map_err(io_at("sizing", &target))?;
        let mut want = [0u8; 32];
        self.exact(&mut want)?;
        if hash.finalize().as_slice() != want {
            return Err(self.damaged(format!("{name} does not match its checksum")));
        }
        file.sync_all().map_err(io_at("flushing", &target))?;
        Ok(())
    }

    fn end(&mut self, files: u32) -> Result<(), BundleError> {
        let count = self.u32()?;
        if count != files {
            return Err(self.damaged(format!("{files} files where the end says {count}")));
        }
        let computed = std::mem::take(&mut self.hash).finalize();
        let mut want = [0u8; 32];
        self.inner
            .read_exact(&mut want)
            .map_err(|_| self.damaged("it ends early (truncated)"))?;
        if computed.as_slice() != want {
            return Err(self.damaged("the bundle does not match its checksum"));
        }
        // Reading on to the end makes age check the final chunk's tag: nothing may follow.
        let mut rest = [0u8; 1];
        match self.inner.read(&mut rest) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.damaged("bytes after the end record")),
            Err(e) => Err(self.damaged(e.to_string())),
        }
    }
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
