//! Files leaving and entering this partition (`bulkhead-copy`, `bulkhead-move`).
//!
//! Outgoing: an offer holds each source open (`O_NOFOLLOW`, regular files only) with its
//! device, inode and size, so the host reads exactly what was offered and a move deletes
//! a path only while it still names that file. Incoming: everything lands under
//! `HOME/Incoming/<source>/`, both directories opened with `O_NOFOLLOW` (a symlink
//! planted there is refused, not followed); each file is written to a hidden temporary
//! created with `O_EXCL`, never past its declared size, and gets its final name at commit
//! with `renameat2(RENAME_NOREPLACE)`: `notes.txt`, else `notes (1).txt`, `notes (2).txt`,
//! … — nothing is ever overwritten. The host is hostile too: every index, offset and length is checked.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_agent_proto::{check_file_name, FileEntry, MAX_FILES, MAX_PAYLOAD};

/// Offers and incoming transfers held at once.
pub const MAX_OPEN: usize = 8;
/// An incoming transfer the host stopped feeding is dropped after this long.
pub const STALE: Duration = Duration::from_secs(120);
/// Names tried for one file before giving up (`name (1)` … `name (999)`).
const MAX_SUFFIX: u32 = 999;

struct Source {
    file: File,
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
}

struct Offer {
    is_move: bool,
    sources: Vec<Source>,
}

struct Incoming {
    dir: OwnedFd,
    files: Vec<(String, String, File, u64)>,
    last: Instant,
}

#[derive(Default)]
pub struct Files {
    next_offer: u32,
    offers: HashMap<u32, Offer>,
    incoming: HashMap<u32, Incoming>,
}

fn errno_string(what: &str, e: io::Error) -> String {
    format!("{what}: {e}")
}

/// The basename a path is offered under, checked like the receiver checks it.
fn offered_name(path: &Path) -> Result<String, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: the name is not UTF-8 text", path.display()))?;
    check_file_name(name).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(name.to_string())
}

/// Opens `path` for reading without following a symlink; regular files only.
fn open_source(path: &Path) -> Result<Source, String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: the path holds a NUL", path.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path; the flags open read-only without
    // following a final symlink; the result is checked before use.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(format!(
                "{}: a symbolic link (copy its target)",
                path.display()
            ));
        }
        return Err(errno_string(&path.display().to_string(), e));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file
        .metadata()
        .map_err(|e| errno_string(&path.display().to_string(), e))?;
    if meta.is_dir() {
        return Err(format!(
            "{}: bulkhead-copy copies files, not directories (make an archive first)",
            path.display()
        ));
    }
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    Ok(Source {
        file,
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
    })
}

impl Files {
    /// Opens `paths` for an offer; returns its number and what to tell the host.
    pub fn offer(
        &mut self,
        paths: &[PathBuf],
        is_move: bool,
    ) -> Result<(u32, Vec<FileEntry>), String> {
        if paths.is_empty() {
            return Err("no files named".into());
        }
        if paths.len() > MAX_FILES {
            return Err(format!(
                "{} files, more than {MAX_FILES} at once",
                paths.len()
            ));
        }
        if self.offers.len() >= MAX_OPEN {
            return Err("too many copies are waiting for the host already".into());
        }
        let mut sources = Vec::new();
        let mut entries: Vec<FileEntry> = Vec::new();
        for p in paths {
            let name = offered_name(p)?;
            if entries.iter().any(|e| e.name == name) {
                return Err(format!("two files are named {name:?}"));
            }
            let s = open_source(p)?;
            entries.push(FileEntry { name, size: s.size });
            sources.push(s);
        }
        self.next_offer = self.next_offer.wrapping_add(1);
        let offer = self.next_offer;
        self.offers.insert(offer, Offer { is_move, sources });
        Ok((offer, entries))
    }

    /// `len` bytes at `offset` of file `index` of `offer` (fewer only at its end).
    pub fn read(&self, offer: u32, index: u32, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        let s = self
            .offers
            .get(&offer)
            .and_then(|o| o.sources.get(index as usize))
            .ok_or_else(|| format!("no file {index} in offer {offer}"))?;
        let len = (len as usize).min(MAX_PAYLOAD);
        let want = s.size.saturating_sub(offset).min(len as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match s.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno_string(&s.path.display().to_string(), e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// The host's last word on `offer`: on success a move deletes each source path that
    /// still names the file offered. Returns the line for the waiting command.
    pub fn outcome(&mut self, offer: u32, error: Option<&str>) -> Option<String> {
        let o = self.offers.remove(&offer)?;
        if let Some(e) = error {
            return Some(format!("error {e}"));
        }
        let mut kept = Vec::new();
        if o.is_move {
            for s in &o.sources {
                let same = std::fs::symlink_metadata(&s.path)
                    .is_ok_and(|m| m.dev() == s.dev && m.ino() == s.ino);
                if !same || std::fs::remove_file(&s.path).is_err() {
                    kept.push(s.path.display().to_string());
                }
            }
        }
        let verb = if o.is_move { "moved" } else { "copied" };
        Some(match kept.as_slice() {
            [] => format!("ok {verb} {} file(s)", o.sources.len()),
            _ => format!(
                "ok {verb} {} file(s); left in place (changed meanwhile): {}",
                o.sources.len(),
                kept.join(", ")
            ),
        })
    }

    /// Prepares `transfer` from `source` under `home/Incoming/<source>/`.
    pub fn incoming(
        &mut self,
        home: &Path,
        transfer: u32,
        source: &str,
        files: &[FileEntry],
    ) -> Result<(), String> {
        self.drop_stale();
        check_file_name(source).map_err(|e| format!("source: {e}"))?;
        if self.incoming.contains_key(&transfer) {
            return Err(format!("transfer {transfer} is already open"));
        }
        if self.incoming.len() >= MAX_OPEN {
            return Err("too many transfers are open".into());
        }
        for f in files {
            check_file_name(&f.name).map_err(|e| e.to_string())?;
        }
        let home_fd = open_dir_at(libc::AT_FDCWD, &home.to_string_lossy(), false)?;
        let top = open_dir_at(home_fd.as_raw_fd(), "Incoming", true)?;
        let dir = open_dir_at(top.as_raw_fd(), source, true)?;
        let total = files.iter().map(|f| f.size).fold(0u64, u64::saturating_add);
        let free = free_bytes(&dir)?;
        if total > free {
            return Err(format!(
                "{total} bytes do not fit in the {free} bytes free here"
            ));
        }
        let mut out: Vec<(String, String, File, u64)> = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let temp = format!(".bulkhead-incoming-{transfer}-{i}");
            let file = match create_at(&dir, &temp) {
                Ok(file) => file,
                Err(e) => {
                    for (_, t, _, _) in &out {
                        unlink_at(&dir, t.as_str());
                    }
                    return Err(e);
                }
            };
            out.push((f.name.clone(), temp, file, f.size));
        }
        self.incoming.insert(
            transfer,
            Incoming {
                dir,
                files: out,
                last: Instant::now(),
            },
        );
        Ok(())
    }

    pub fn write(
        &mut self,
        transfer: u32,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let t = self
            .incoming
            .get_mut(&transfer)
            .ok_or_else(|| format!("no open transfer {transfer}"))?;
        t.last = Instant::now();
        let (name, _, file, size) = t
            .files
            .get(index as usize)
            .ok_or_else(|| format!("no file {index} in transfer {transfer}"))?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| e <= size)
            .ok_or_else(|| format!("{name:?}: write past its declared {size} bytes"))?;
        file.write_all_at(data, offset)
            .map_err(|e| errno_string(name, e))?;
        let _ = end;
        Ok(())
    }

    /// Checks every size and gives each file its final name; `abort` removes them.
    pub fn commit(&mut self, transfer: u32, abort: bool) -> Result<(), String> {
        let t = self
            .incoming
            .remove(&transfer)
            .ok_or_else(|| format!("no open transfer {transfer}"))?;
        let remove_all = |t: &Incoming| {
            for (_, temp, _, _) in &t.files {
                unlink_at(&t.dir, temp);
            }
        };
        if abort {
            remove_all(&t);
            return Ok(());
        }
        for (name, _, file, size) in &t.files {
            let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if len != *size {
                remove_all(&t);
                return Err(format!(
                    "{name:?}: {len} bytes arrived, {size} were announced"
                ));
            }
            file.sync_all().map_err(|e| errno_string(name, e))?;
        }
        let mut failed = None;
        for (name, temp, _, _) in &t.files {
            if let Err(e) = give_name(&t.dir, temp, name) {
                unlink_at(&t.dir, temp);
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn drop_stale(&mut self) {
        let stale: Vec<u32> = self
            .incoming
            .iter()
            .filter(|(_, t)| t.last.elapsed() > STALE)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let _ = self.commit(id, true);
        }
    }

    /// The host's end is new (a restart, a restore): nothing half-done survives it.
    pub fn reset(&mut self) -> Vec<u32> {
        let ids: Vec<u32> = self.incoming.keys().copied().collect();
        for id in ids {
            let _ = self.commit(id, true);
        }
        self.offers.drain().map(|(id, _)| id).collect()
    }
}

/// Opens (creating it if `create`, mode 0700) directory `name` under `at`, refusing a
/// symlink there.
fn open_dir_at(at: libc::c_int, name: &str, create: bool) -> Result<OwnedFd, String> {
    let c = CString::new(name).map_err(|_| format!("{name:?} holds a NUL"))?;
    if create {
        // SAFETY: `at` is a directory fd (or AT_FDCWD) and `c` a valid path.
        let r = unsafe { libc::mkdirat(at, c.as_ptr(), 0o700) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(errno_string(&format!("creating {name}"), e));
            }
        }
    }
    // SAFETY: as above; O_NOFOLLOW|O_DIRECTORY refuses a symlink or a non-directory.
    let fd = unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) {
            return Err(format!(
                "{name} is not a plain directory (a symbolic link?): refused"
            ));
        }
        return Err(errno_string(name, e));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn create_at(dir: &OwnedFd, name: &str) -> Result<File, String> {
    let c = CString::new(name).map_err(|_| format!("{name:?} holds a NUL"))?;
    // SAFETY: `dir` is an open directory, `c` a valid basename; O_EXCL|O_NOFOLLOW never
    // reuse or follow anything already there.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(errno_string(name, io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn unlink_at(dir: &OwnedFd, name: &str) {
    if let Ok(c) = CString::new(name) {
        // SAFETY: `dir` is an open directory and `c` a valid basename.
        unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
    }
}

/// `notes.txt` as the `n`th alternative: `notes (n).txt` (`.bashrc` → `.bashrc (n)`).
fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rfind('.').filter(|&i| i > 0) {
        Some(i) => format!("{} ({n}){}", &name[..i], &name[i..]),
        None => format!("{name} ({n})"),
    }
}

/// `name`, or the first of `name (1)`, `name (2)`, … that does not exist.
fn give_name(dir: &OwnedFd, temp: &str, name: &str) -> Result<(), String> {
    let from = CString::new(temp).map_err(|_| "bad temporary name".to_string())?;
    for n in 0..=MAX_SUFFIX {
        let candidate = numbered(name, n);
        if candidate.len() > bulkhead_agent_proto::MAX_NAME {
            break;
        }
        let to = CString::new(candidate.as_str()).map_err(|_| "bad name".to_string())?;
        // SAFETY: both names are valid basenames in the open directory `dir`;
        // RENAME_NOREPLACE fails instead of replacing an existing entry.
        let r = unsafe {
            libc::renameat2(
                dir.as_raw_fd(),
                from.as_ptr(),
                dir.as_raw_fd(),
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(errno_string(&format!("naming {name:?}"), e));
        }
    }
    Err(format!("{name:?}: every free name is taken"))
}

fn free_bytes(dir: &OwnedFd) -> Result<u64, String> {
    // SAFETY: statvfs is plain data, filled by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open fd and `st` a valid statvfs.
    if unsafe { libc::fstatvfs(dir.as_raw_fd(), &mut st) } != 0 {
        return Err(errno_string("free space", io::Error::last_os_error()));
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, size: u64) -> FileEntry {
        FileEntry {
            name: name.into(),
            size,
        }
    }

    fn landed(home: &Path, src: &str, name: &str) -> Vec<u8> {
        std::fs::read(home.join("Incoming").join(src).join(name)).unwrap()
    }

    #[test]
    fn a_file_lands_byte_exact_and_an_existing_name_is_never_overwritten() {
        let home = tempfile::tempdir().unwrap();
        let mut f = Files::default();
        for (t, content) in [(1u32, b"first".as_slice()), (2, b"second")] {
            f.incoming(home.path(), t, "work", &[entry("x", content.len() as u64)])
                .unwrap();
            f.write(t, 0, 0, content).unwrap();
            f.commit(t, false).unwrap();
        }
        assert_eq!(landed(home.path(), "work", "x"), b"first");
        assert_eq!(landed(home.path(), "work", "x (1)"), b"second");
        assert_eq!(numbered("notes (1).txt", 1), "notes (1) (1).txt");
        assert_eq!(numbered(".bashrc", 2), ".bashrc (2)");
    }

    #[test]
    fn a_symlink_planted_at_incoming_or_its_source_directory_is_not_followed() {
        let home = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), home.path().join("Incoming")).unwrap();
        let mut f = Files::default();
        let err = f
            .incoming(home.path(), 1, "work", &[entry("a", 1)])
            .unwrap_err();
        assert!(err.contains("not a plain directory"), "{err}");
        std::fs::remove_file(home.path().join("Incoming")).unwrap();
        std::fs::create_dir(home.path().join("Incoming")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), home.path().join("Incoming/work")).unwrap();
        assert!(f
            .incoming(home.path(), 1, "work", &[entry("a", 1)])
            .is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn writes_outside_what_was_announced_are_refused_and_a_short_file_is_not_committed() {
        let home = tempfile::tempdir().unwrap();
        let mut f = Files::default();
        f.incoming(home.path(), 7, "web", &[entry("a", 4)]).unwrap();
        assert!(f
            .write(7, 0, 2, b"xyz")
            .unwrap_err()
            .contains("past its declared"));
        assert!(f.write(7, 1, 0, b"x").is_err());
        assert!(f.write(8, 0, 0, b"x").is_err());
        assert!(f.write(7, 0, u64::MAX, b"x").is_err());
        f.write(7, 0, 0, b"ab").unwrap();
        assert!(f.commit(7, false).unwrap_err().contains("2 bytes arrived"));
        // Nothing is left behind, not even the temporary.
        assert_eq!(
            std::fs::read_dir(home.path().join("Incoming/web"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn an_aborted_transfer_leaves_nothing() {
        let home = tempfile::tempdir().unwrap();
        let mut f = Files::default();
        f.incoming(home.path(), 3, "web", &[entry("a", 1), entry("b", 0)])
            .unwrap();
        f.write(3, 0, 0, b"a").unwrap();
        f.commit(3, true).unwrap();
        assert_eq!(
            std::fs::read_dir(home.path().join("Incoming/web"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn the_source_refuses_symlinks_directories_and_devices() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let mut f = Files::default();
        assert!(f
            .offer(&[link], false)
            .unwrap_err()
            .contains("symbolic link"));
        assert!(f
            .offer(&[dir.path().to_path_buf()], false)
            .unwrap_err()
            .contains("not directories"));
        assert!(f
            .offer(&[PathBuf::from("/dev/null")], false)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(f
            .offer(&[file.clone(), file], false)
            .unwrap_err()
            .contains("two files"));
    }

    #[test]
    fn reads_are_bounded_by_the_offer_and_end_short_at_the_end_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, b"0123456789").unwrap();
        let mut f = Files::default();
        let (offer, entries) = f.offer(&[file], false).unwrap();
        assert_eq!(entries, vec![entry("data", 10)]);
        assert_eq!(f.read(offer, 0, 4, 100).unwrap(), b"456789");
        assert_eq!(f.read(offer, 0, 20, 100).unwrap(), b"");
        assert!(f.read(offer, 1, 0, 1).is_err());
        assert!(f.read(offer + 1, 0, 0, 1).is_err());
    }

    #[test]
    fn a_move_deletes_its_source_only_after_success_and_only_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let mut f = Files::default();
        let (offer, _) = f.offer(std::slice::from_ref(&a), true).unwrap();
        assert!(f
            .outcome(offer, Some("refused"))
            .unwrap()
            .starts_with("error"));
        assert!(a.exists(), "a failed move deletes nothing");
        let (offer, _) = f.offer(&[a.clone(), b.clone()], true).unwrap();
        // `b` is replaced by another file before the host confirms.
        std::fs::remove_file(&b).unwrap();
        std::fs::write(&b, b"new").unwrap();
        let line = f.outcome(offer, None).unwrap();
        assert!(line.contains("left in place"), "{line}");
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
    }
}
