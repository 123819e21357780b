//! A partition's private disk: its user's home, an ext4 image created sparse on first
//! start under the XDG data dir and kept across restarts; for a disposable, a throwaway
//! one made at every start and unlinked as soon as it is open, so it is gone (space and
//! all) when the partition process ends, however it ends.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's session user owns the new file system's root.
const GUEST_USER: &str = "1000:1000";

#[derive(Debug, thiserror::Error)]
pub enum PrivateDiskError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`mke2fs` could not be run ({0}): install e2fsprogs to create private disks")]
    NoMkfs(std::io::Error),
    #[error("`mke2fs` failed on {path}: {detail}")]
    Mkfs { path: PathBuf, detail: String },
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PrivateDiskError + 'a {
    move |source| PrivateDiskError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `$XDG_DATA_HOME/bulkhead`, or `~/.local/share/bulkhead`.
pub fn data_root() -> PathBuf {
    data_root_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

pub(crate) fn data_root_from(
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(dir) = xdg.map(PathBuf::from).filter(|d| d.is_absolute()) {
        return dir.join("bulkhead");
    }
    PathBuf::from(home.unwrap_or_else(|| "/tmp".into())).join(".local/share/bulkhead")
}

/// Where partition `name` keeps its private disk.
pub fn private_disk_path(name: &str) -> PathBuf {
    data_root()
        .join("partitions")
        .join(name)
        .join("private.img")
}

/// Opens the private disk at `path` for writing, creating it (sparse ext4 of `size_mib`)
/// if it does not exist yet. A half-made disk never takes the name: it is made under a
/// temporary name and renamed when complete. An existing disk is used as it is, whatever
/// its size (growing one is the user's explicit act, not a config edit's side effect).
pub fn open_or_create(path: &Path, size_mib: u32) -> Result<File, PrivateDiskError> {
    if !path.exists() {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let tmp = path.with_extension("img.partial");
        make_ext4(&tmp, size_mib)?;
        fs::rename(&tmp, path).map_err(io("naming", path))?;
        tracing::info!(path = %path.display(), size_mib, "created a private disk");
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("opening", path))
}

/// A throwaway private disk in `dir`: created, opened, and unlinked before it is returned.
pub fn throwaway(dir: &Path, size_mib: u32) -> Result<File, PrivateDiskError> {
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join(format!(
        "disposable-{}-{}.img",
        std::process::id(),
        unique_suffix()
    ));
    let result = make_ext4(&path, size_mib).and_then(|()| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))
    });
    let _ = fs::remove_file(&path);
    result
}

/// A fresh ext4 at `path` (replacing whatever was there), kept under its name: the
/// first disposable's disk, which is copied into its template's snapshot.
pub fn fresh_at(path: &Path, size_mib: u32) -> Result<(), PrivateDiskError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let _ = fs::remove_file(path);
    make_ext4(path, size_mib)
}

/// A throwaway copy of `source` in `dir`: copied sparse, opened, and unlinked before
/// it is returned (a restored disposable's own disk).
pub fn throwaway_copy(source: &Path, dir: &Path) -> Result<File, PrivateDiskError> {
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let path = dir.join(format!(
        "disposable-{}-{}.img",
        std::process::id(),
        unique_suffix()
    ));
    let result = sparse_copy(source, &path).and_then(|()| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))
    });
    let _ = fs::remove_file(&path);
    result
}

/// Copies `from` to a new file `to` of the same length, writing only its data
/// extents (`SEEK_DATA`/`SEEK_HOLE`): a mostly empty ext4 of gigabytes copies in
/// milliseconds and stays sparse. Synced before it returns.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<(), PrivateDiskError> {
    use rustix::fs::{seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let src = File::open(from).map_err(io("opening", from))?;
    let len = src
        .metadata()
        .map_err(io("reading the size of", from))?
        .len();
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io("creating", to))?;
    dst.set_len(len).map_err(io("sizing", to))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        // ENXIO: no data after `at`, the rest is a hole.
        let Ok(data) = seek(&src, SeekFrom::Data(at)) else {
            break;
        };
        let hole = seek(&src, SeekFrom::Hole(data)).unwrap_or(len).min(len);
        let mut pos = data;
        while pos < hole {
            let n = (hole - pos).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], pos)
                .map_err(io("reading", from))?;
            dst.write_all_at(&buf[..n], pos)
                .map_err(io("writing", to))?;
            pos += n as u64;
        }
        at = hole;
    }
    dst.sync_all().map_err(io("syncing", to))
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A sparse file of `size_mib` with an empty ext4 owned by the guest user.
fn make_ext4(path: &Path, size_mib: u32) -> Result<(), PrivateDiskError> {
    let file = File::create(path).map_err(io("creating", path))?;
    file.set_len(u64::from(size_mib) << 20)
        .map_err(io("sizing", path))?;
    drop(file);
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-L", "private", "-E"])
        .arg(format!(
            "root_owner={GUEST_USER},lazy_itable_init=0,lazy_journal_init=0,nodiscard"
        ))
        .arg(path)
        .output()
        .map_err(|e| {
            let _ = fs::remove_file(path);
            PrivateDiskError::NoMkfs(e)
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(path);
        return Err(PrivateDiskError::Mkfs {
            path: path.to_path_buf(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext4_magic(file: &mut File) -> [u8; 2] {
        use std::io::{Read, Seek, SeekFrom};
        let mut magic = [0; 2];
        file.seek(SeekFrom::Start(1024 + 0x38)).unwrap();
        file.read_exact(&mut magic).unwrap();
        magic
    }

    #[test]
    fn a_private_disk_is_made_sparse_once_and_then_reused_with_its_contents() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("work/private.img");
        let mut disk = open_or_create(&path, 256).unwrap();
        assert_eq!(ext4_magic(&mut disk), [0x53, 0xef]);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 256 << 20);
        assert!(meta.blocks() * 512 < meta.len() / 2, "not sparse");
        // What the guest wrote is still there at the next start, at any configured size.
        disk.seek(SeekFrom::Start(200 << 20)).unwrap();
        disk.write_all(b"kept").unwrap();
        drop(disk);
        let again = open_or_create(&path, 4096).unwrap();
        assert_eq!(again.metadata().unwrap().len(), 256 << 20);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(&bytes[200 << 20..(200 << 20) + 4], b"kept");
        assert!(!path.with_extension("img.partial").exists());
    }

    #[test]
    fn a_throwaway_disk_has_no_name_left_once_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = throwaway(dir.path(), 128).unwrap();
        assert_eq!(ext4_magic(&mut disk), [0x53, 0xef]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn what_a_disposable_wrote_is_gone_at_its_next_start() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let mut first = throwaway(dir.path(), 64).unwrap();
        first.seek(SeekFrom::Start(32 << 20)).unwrap();
        first.write_all(b"secret").unwrap();
        drop(first);
        let mut second = throwaway(dir.path(), 64).unwrap();
        second.seek(SeekFrom::Start(32 << 20)).unwrap();
        let mut bytes = [0; 6];
        second.read_exact(&mut bytes).unwrap();
        assert_eq!(bytes, [0; 6]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_disposable_copy_has_the_sources_bytes_stays_sparse_and_has_no_name() {
        use std::io::{Read, Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src/private.img");
        fresh_at(&source, 128).unwrap();
        let mut f = OpenOptions::new().write(true).open(&source).unwrap();
        f.seek(SeekFrom::Start(100 << 20)).unwrap();
        f.write_all(b"at snapshot time").unwrap();
        drop(f);
        let copies = dir.path().join("copies");
        let mut copy = throwaway_copy(&source, &copies).unwrap();
        assert_eq!(fs::read_dir(&copies).unwrap().count(), 0);
        assert_eq!(ext4_magic(&mut copy), [0x53, 0xef]);
        copy.seek(SeekFrom::Start(100 << 20)).unwrap();
        let mut got = [0u8; 16];
        copy.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"at snapshot time");
        let meta = copy.metadata().unwrap();
        assert_eq!(meta.len(), 128 << 20);
        assert!(meta.blocks() * 512 < meta.len() / 2, "not sparse");
        // A write to the copy never reaches the source.
        copy.seek(SeekFrom::Start(100 << 20)).unwrap();
        copy.write_all(b"the clone's own.").unwrap();
        let src = fs::read(&source).unwrap();
        assert_eq!(&src[100 << 20..(100 << 20) + 16], b"at snapshot time");
    }

    #[test]
    fn data_root_follows_xdg_then_home() {
        assert_eq!(
            data_root_from(Some("/x".into()), Some("/h".into())),
            PathBuf::from("/x/bulkhead")
        );
        assert_eq!(
            data_root_from(Some("rel".into()), Some("/h".into())),
            PathBuf::from("/h/.local/share/bulkhead")
        );
    }
}
